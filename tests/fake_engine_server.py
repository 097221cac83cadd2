"""`python -m tests.fake_engine_server PORT LOG [STARTUP_S]`: a stand-in for `vllm serve` in the
shared-engine tests: answers `/health` and `/v1/chat/completions` (the answer names this server's
pid and echoes the last message) after STARTUP_S seconds, and appends one line per request to LOG.
"""

from __future__ import annotations

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main(port: int, log: str, startup_s: float) -> None:
    time.sleep(startup_s)  # a model loading: connections are refused meanwhile

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def reply(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self.reply(b"{}")

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            said = request["messages"][-1]["content"]
            with open(log, "a") as handle:
                handle.write(json.dumps({"server": os.getpid(), "said": said}) + "\n")
            content = json.dumps({"server": os.getpid(), "said": said})
            self.reply(json.dumps({
                "choices": [{"message": {"content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            }).encode())

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
