"""The seed's training script (`python train.py --learning-rate 0.001 --epochs 100`), small enough for a CPU.

Logistic regression on synthetic data with numpy. Uses the GPU through CUDA_VISIBLE_DEVICES only to report it;
metrics and progress go to jupyter-launch when it is importable, and the weights are saved as an output.
"""

import argparse
import os

import numpy as np

try:
    import jupyter_launch
except ImportError:  # running outside jupyter-launch: plain prints still work
    jupyter_launch = None

parser = argparse.ArgumentParser()
parser.add_argument("--learning-rate", type=float, default=0.001)
parser.add_argument("--epochs", type=int, default=100)
args = parser.parse_args()

print(f"GPUs visible: {os.environ.get('CUDA_VISIBLE_DEVICES') or 'none'}; "
      f"API key set: {'yes' if os.environ.get('MY_API_KEY') else 'no'}", flush=True)
rng = np.random.default_rng(0)
X = rng.normal(size=(2000, 10))
y = (X @ rng.normal(size=10) > 0).astype(float)
w = np.zeros(10)
# The seed's learning rate is small for plain gradient descent; scale the step so 100 epochs converge.
step = args.learning_rate * 500
for epoch in range(args.epochs):
    p = 1 / (1 + np.exp(-(X @ w)))
    loss = float(-np.mean(y * np.log(p + 1e-9) + (1 - y) * np.log(1 - p + 1e-9)))
    w -= step * X.T @ (p - y) / len(y)
    if jupyter_launch:
        jupyter_launch.log({"loss": loss}, step=epoch)
        jupyter_launch.progress(epoch + 1, args.epochs, "epochs")
    if epoch % 20 == 0 or epoch == args.epochs - 1:
        print(f"epoch {epoch:3d} loss {loss:.4f}", flush=True)
out = jupyter_launch.output_dir() if jupyter_launch else "."
np.save(os.path.join(out, "weights.npy"), w)
print("done", flush=True)
