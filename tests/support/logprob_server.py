"""A stand-in inference server (a real HTTP server process) for the served-member tests.

It serves a tiny in-process model (tests/fixtures/tiny.py, same seed => same
logits as the tests' own copy) in the two wire formats the served backend
speaks:

- POST /v1/completions: vLLM's OpenAI-compatible completions, checked against
  vLLM's documented request schema (prompt as token ids, `logprobs` <=
  `--max-logprobs`, `return_tokens_as_token_ids`), replying with vLLM's
  `CompletionResponse` shape (`choices[0].logprobs.top_logprobs[0]` keyed by
  "token_id:<id>", the sampled token included, -9999.0 for -inf);
- POST /completion: llama.cpp's llama-server format (`completion_probabilities`).

vLLM needs a GPU and cannot be installed on these machines, so this is how its
wire format is exercised; llama.cpp's own format is also tested against the
real `llama-server` (tests/integration/test_served_llama_server.py).

Failure knobs: --delay-first N sleeps N seconds before answering the first
completion request (a slow server); --fail-first N answers the first N with
HTTP 503; --hold-partial answers llama.cpp requests without a grammar with no
probabilities (llama-server's reply when the sampled token ends inside a
UTF-8 character). It prints "PORT <n>" on stdout once it listens.

    python -m tests.support.logprob_server --seed 2 [--port 0] [--max-logprobs 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from tests.fixtures.tiny import PAD_ROWS, byte_level_tokenizer, tiny_model


def serve(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    tok = byte_level_tokenizer()
    model = tiny_model(len(tok) + PAD_ROWS, seed=args.seed).eval()
    lock = threading.Lock()
    state = {"completions": 0}

    def logprobs_after(ids: list[int]) -> torch.Tensor:
        with lock, torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
        return torch.log_softmax(logits, dim=-1)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers

        def log_message(self, *a):  # quiet
            pass

        def reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def error(self, status: int, message: str) -> None:
            self.reply(status, {"error": {"message": message, "type": "BadRequestError", "code": status}})

        def do_GET(self):
            if self.path == "/health":
                self.reply(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self.reply(200, {"object": "list", "data": [{"id": "tiny", "object": "model"}]})
            else:
                self.error(404, f"no route {self.path}")

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            with lock:
                state["completions"] += 1
                n = state["completions"]
            if n <= args.fail_first:
                return self.error(503, "Loading model")
            if n == 1 and args.delay_first:
                time.sleep(args.delay_first)
            if self.path == "/v1/completions":
                return self.openai(body)
            if self.path == "/completion":
                return self.llama_cpp(body)
            self.error(404, f"no route {self.path}")

        def openai(self, body: dict) -> None:
            # vLLM's CompletionRequest: model, prompt (str | list[int] | ...), max_tokens, logprobs (int),
            # return_tokens_as_token_ids (bool); logprobs above --max-logprobs is a 400.
            prompt, k = body.get("prompt"), body.get("logprobs")
            if body.get("model") != "tiny":
                return self.error(404, f"The model `{body.get('model')}` does not exist.")
            if not (isinstance(prompt, list) and prompt and all(isinstance(i, int) for i in prompt)):
                return self.error(400, "prompt must be a non-empty list of token ids here")
            if not isinstance(k, int) or k < 0:
                return self.error(400, "logprobs must be a non-negative integer")
            if k > args.max_logprobs:
                return self.error(400, f"Requested sample logprobs of {k}, which is greater than max allowed: {args.max_logprobs}")
            if body.get("max_tokens") != 1 or body.get("return_tokens_as_token_ids") is not True:
                return self.error(400, "this stand-in answers max_tokens=1 with return_tokens_as_token_ids=true only")
            logprobs = logprobs_after(prompt)
            top = torch.topk(logprobs, k)
            sampled = int(top.indices[0])  # temperature 0: greedy
            entries = {f"token_id:{sampled}": max(float(logprobs[sampled]), -9999.0)}
            entries.update({f"token_id:{int(i)}": max(float(v), -9999.0) for v, i in zip(top.values, top.indices)})
            self.reply(200, {
                "id": "cmpl-standin", "object": "text_completion", "created": int(time.time()), "model": "tiny",
                "choices": [{
                    "index": 0, "text": f"token_id:{sampled}", "finish_reason": "length", "stop_reason": None,
                    "prompt_logprobs": None,
                    "logprobs": {"text_offset": [0], "token_logprobs": [entries[f"token_id:{sampled}"]],
                                 "tokens": [f"token_id:{sampled}"], "top_logprobs": [entries]},
                }],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": 1, "total_tokens": len(prompt) + 1},
            })

        def llama_cpp(self, body: dict) -> None:
            prompt, k = body.get("prompt"), int(body.get("n_probs", 0))
            logprobs = logprobs_after(prompt)
            top = torch.topk(logprobs, k)
            if args.hold_partial and "grammar" not in body:
                # llama-server holds back a sampled token that ends inside a UTF-8 character, and
                # its probabilities with it: here every sampled token is taken to be one.
                return self.reply(200, {"content": "", "tokens": [], "stop": True, "stop_type": "limit",
                                        "tokens_predicted": 1})
            items = [{"id": int(i), "token": "", "bytes": [], "logprob": float(v)} for v, i in zip(top.values, top.indices)]
            first = {"id": items[0]["id"], "token": "", "bytes": [], "logprob": items[0]["logprob"], "top_logprobs": items}
            self.reply(200, {"content": "", "tokens": [], "completion_probabilities": [first], "stop": True,
                             "tokens_predicted": 1})

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--max-logprobs", type=int, default=20)
    parser.add_argument("--delay-first", type=float, default=0.0)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--hold-partial", action="store_true",
                        help="llama_cpp API: no probabilities unless the request has a grammar (as llama-server "
                             "for a token that ends inside a UTF-8 character)")
    serve(parser.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
