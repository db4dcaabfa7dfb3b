"""The program a math-verify worker process runs, for `math_equal` called outside the main thread.

In its own main thread math-verify's signal timeouts work, and the caller kills the process when a
single C call (a power tower's integer) outlasts them. Run by `rewards/math.py` with `python -I -c`;
argv[1] is the caller's `sys.path` as JSON, so that both import the same packages. Messages are
framed as in rewards/worker.py.
"""

import json
import os
import struct
import sys

REPLIES = None  # the real stdout; fd 1 goes to /dev/null so that nothing a library prints garbles a reply


def read_body():
    head = sys.stdin.buffer.read(4)
    if len(head) < 4:
        sys.exit(0)  # the caller closed the pipe
    return sys.stdin.buffer.read(struct.unpack("<I", head)[0])


def send(obj):
    data = json.dumps(obj).encode()
    REPLIES.write(struct.pack("<I", len(data)) + data)
    REPLIES.flush()


def main():
    global REPLIES
    REPLIES = os.fdopen(os.dup(1), "wb")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    sys.path[:0] = json.loads(sys.argv[1])
    from thinkgym.rewards.math import math_equal

    math_equal("1", "1")  # import math-verify (and sympy) now, not in the first request's time
    send({"ready": True})
    while True:
        req = json.loads(read_body())
        send({"equal": math_equal(req["pred"], req["gold"])})


if __name__ == "__main__":
    main()
