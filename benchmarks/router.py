"""LiveRouter overhead per call, without decoding: routing, config handling and the MLflow trace.

    python benchmarks/router.py [--calls 2000] [--repeats 5]

The arms are trivial runnables (a lambda returning a constant), so what is timed is what the
router adds to a call: the salted hash of the key, the arm lookup, the config it passes on,
and, in the "mlflow" row, opening and closing one MLflow span per call with the assignment as
trace tags (a local sqlite store in a temporary folder, traces exported synchronously).
Reported: the median over repeats of the mean time per call, minus the same for calling the
arm directly; with the load average and the thread count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from langchain_core.runnables import RunnableLambda


def per_call(fn, calls: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(calls):
            fn(i)
        times.append((time.perf_counter() - started) / calls)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mlflow-calls", type=int, default=200, help="calls per repeat with the MLflow recorder")
    parser.add_argument("--async-traces", action="store_true",
                        help="export traces in MLflow's background queue (MLFLOW_ENABLE_ASYNC_TRACE_LOGGING=true)")
    args = parser.parse_args()

    from chared_flows.combinations.router import LiveRouter

    arm = RunnableLambda(lambda x: "ok")
    arms = {"champion": arm, "challenger": RunnableLambda(lambda x: "ok")}
    shares = {"champion": 0.9, "challenger": 0.1}
    bare = LiveRouter("bench", arms, shares, control="champion")
    configs = [{"configurable": {"user_id": f"user-{i}"}} for i in range(args.calls)]

    direct = per_call(lambda i: arm.invoke("q", configs[i]), args.calls, args.repeats)
    routed = per_call(lambda i: bare.invoke("q", configs[i]), args.calls, args.repeats)
    print(f"load average before: {os.getloadavg()[0]:.2f}; threads: 1 (pure Python)")
    print(f"arm called directly:        {direct * 1e6:8.1f} us/call")
    print(f"through the router:         {routed * 1e6:8.1f} us/call  -> overhead {(routed - direct) * 1e6:.1f} us")

    with tempfile.TemporaryDirectory() as folder:
        os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "true" if args.async_traces else "false"
        from chared_flows.combinations.live_mlflow import MlflowRecorder

        recorded = LiveRouter("bench", arms, shares, control="champion",
                              recorders=[MlflowRecorder(f"sqlite:///{folder}/mlflow.db")])
        recorded.invoke("q", configs[0])  # creates the store's tables
        traced = per_call(lambda i: recorded.invoke("q", configs[i]), args.mlflow_calls, args.repeats)
        import mlflow

        if args.async_traces:  # subtle: drain the queue before the store's folder is removed
            mlflow.flush_trace_async_logging(terminate=True)
        print(f"router + MLflow trace:      {traced * 1e6:8.1f} us/call  -> overhead {(traced - direct) * 1e6:.1f} us "
              f"({'background' if args.async_traces else 'synchronous'} export to sqlite)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
