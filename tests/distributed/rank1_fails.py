"""Rank 1 exits with code 3 a second after every rank has said it is up; the others would sleep ten minutes: a
backend must fail the job with rank 1's code and stop them."""

import os
import sys
import time

print("up", flush=True)
if os.environ["RANK"] == "1":
    time.sleep(1)
    sys.exit(3)
time.sleep(600)
