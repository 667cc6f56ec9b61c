"""How a job's folder reaches its pod and its outputs come back: the init container (a static busybox copied into the
pod, the folder unpacked), the launcher the job's container runs with that busybox (run the job, print the outputs
as marker lines), the packed folder (a ConfigMap's content, or an image built on top of the job's environment
image), and the splitter that takes the outputs back out of the pod's log."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ...images import BUILDER_VERSION, HASH_LABEL, BuildSettings

WORK_DIR = "/jl/work"
ARTIFACT_DIR = "/jl/artifact"
ARTIFACT_KEY = "artifact.tar.gz"
OUTPUTS_MARK = b"\x1ejupyter-launch-outputs"
JOB_IMAGE_REPOSITORY = "jupyter-launch-job"

# The fast path, for images known to have a Python (every notebook and cell job's, an image the agent built): no
# init container. Runs in the pod (any Python >= 3.8 in the image): unpack the job's folder from the ConfigMap, run the job,
# forward SIGTERM to it, then print the output folder as base64 lines (each < PIPE_BUF, so a stray writer cannot
# split one) and exit with the job's code. argv: the job's command.
PY_BOOTSTRAP = r'''
import base64, hashlib, io, os, signal, subprocess, sys, tarfile
work, out = os.getcwd(), os.environ["JUPYTER_LAUNCH_OUTPUT_DIR"]
mark = "\x1ejupyter-launch-outputs"
with tarfile.open("/jl/artifact/artifact.tar.gz") as tar:
    for m in tar.getmembers():
        parts = m.name.split("/")
        if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in parts:
            sys.exit("jupyter-launch: refusing unsafe artifact member %r" % m.name)
    if hasattr(tarfile, "data_filter"):
        tar.extractall(work, filter="data")
    else:
        tar.extractall(work)
os.makedirs(out, exist_ok=True)
argv = sys.argv[1:]
if argv[0] in ("python", "python3"):
    argv[0] = sys.executable
try:
    proc = subprocess.Popen(argv)
except OSError as exc:
    print("jupyter-launch: cannot start %r: %s" % (argv[0], exc.strerror), file=sys.stderr, flush=True)
    code = 127
else:
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda n, f: proc.send_signal(n))
    code = proc.wait()
    code = code if code >= 0 else 128 - code
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w:gz") as tar:
    for root, dirs, files in os.walk(out):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            if os.path.isfile(path) and not os.path.islink(path):
                tar.add(path, arcname=os.path.relpath(path, out), recursive=False)
data = buf.getvalue()
text = base64.b64encode(data).decode()
sys.stdout.flush()
for i in range(0, len(text), 3000):
    os.write(1, ("%s %s\n" % (mark, text[i:i + 3000])).encode())
os.write(1, ("%s-end %s %d\n" % (mark, hashlib.sha256(data).hexdigest(), len(data))).encode())
sys.exit(code)
'''
# Find a Python in the image (``python3`` first, as Debian has no ``python``), then run the bootstrap.
PY_LAUNCHER = ('p=$(command -v python3 || command -v python) || { echo "jupyter-launch: the image has no python3 '
            'or python; the kubernetes backend needs one to unpack the job" >&2; exit 127; }; exec "$p" -c "$0" "$@"')

TOOLS_DIR = "/jl/bin"  # an emptyDir: the init container leaves a static busybox here for the job's container
BUSYBOX = f"{TOOLS_DIR}/busybox"
UNPACKED = f"{TOOLS_DIR}/unpacked"  # the init container unpacked the folder (from the ConfigMap)

# A command job on an image it names (which may have no Python, or not even a shell) gets an init container instead.
# The init container, in the queue's helper image (a static busybox at /bin/busybox, as in the official busybox
# image): copy that one binary into the pod and unpack the job's folder from the ConfigMap when there is one. A job
# image carries its folder itself at the same path, out of the helper's sight: the job's container unpacks it then.
INIT = (f"set -e -o pipefail; /bin/busybox cp /bin/busybox {BUSYBOX}; "
        f"if [ -f {ARTIFACT_DIR}/{ARTIFACT_KEY} ]; then "
        f"/bin/busybox gzip -dc {ARTIFACT_DIR}/{ARTIFACT_KEY} | /bin/busybox tar -xf - -C {WORK_DIR}; "
        f"/bin/busybox touch {UNPACKED}; fi")

# The job's container runs this with the copied busybox's sh, so its own image needs no shell, tar or Python: unpack
# the folder if the init container could not, run the job (its argv, found on the image's own PATH), forward SIGTERM
# to it, then print the output folder as base64 marker lines (each < PIPE_BUF, so a stray writer cannot split one)
# and exit with the job's code. $0 is a name; "$@" the job's command.
LAUNCHER = r"""
unset SHLVL  # the launcher's shell's own, not the job's
set -o pipefail
B=/jl/bin/busybox
M=$(printf '\036jupyter-launch-outputs')
out=$JUPYTER_LAUNCH_OUTPUT_DIR
if [ ! -e /jl/bin/unpacked ] && [ -f /jl/artifact/artifact.tar.gz ]; then
  # (busybox's tar -z would look for a gzip program on the image's PATH: its own gzip instead)
  $B gzip -dc /jl/artifact/artifact.tar.gz | $B tar -xf - -C /jl/work \
    || { echo "jupyter-launch: cannot unpack the job's folder" >&2; exit 1; }
fi
$B mkdir -p "$out"
# The image's own program, not a busybox applet of the same name: look it up on PATH ourselves.
find_cmd() {
  case $1 in */*) [ -x "$1" ] && echo "$1"; return;; esac
  old_ifs=$IFS; IFS=:
  for d in ${PATH:-/usr/local/bin:/usr/bin:/bin}; do
    if [ -x "${d:-.}/$1" ] && [ ! -d "${d:-.}/$1" ]; then IFS=$old_ifs; echo "${d:-.}/$1"; return 0; fi
  done
  IFS=$old_ifs; return 1
}
prog=$(find_cmd "$1")
if [ -z "$prog" ]; then
  case $1 in python) prog=$(find_cmd python3);; python3) prog=$(find_cmd python);; esac
fi
if [ -z "$prog" ]; then
  echo "jupyter-launch: cannot start '$1': not found in the job's image (PATH=$PATH)" >&2
  code=127
else
  shift
  "$prog" "$@" &
  pid=$!
  trap '$B kill -TERM $pid 2>/dev/null' TERM INT
  while :; do
    wait $pid; code=$?
    $B kill -0 $pid 2>/dev/null || break  # a trapped signal ended the wait, not the job: wait again
  done
fi
trap - TERM INT
$B find "$out" ! -type f ! -type d -exec $B rm -f {} \; 2>/dev/null
tgz=/jl/bin/outputs.tar.gz
(cd "$out" && $B tar -cf - . | $B gzip -c > "$tgz") || { echo "jupyter-launch: cannot pack the outputs" >&2; exit $code; }
sum=$($B sha256sum "$tgz" | $B cut -d' ' -f1)
size=$(( $($B wc -c < "$tgz") ))
$B base64 -w 3000 "$tgz" | while IFS= read -r line || [ -n "$line" ]; do
  [ -n "$line" ] && printf '%s %s\n' "$M" "$line"
done
printf '%s-end %s %d\n' "$M" "$sum" "$size"
exit $code
"""


def _workdir_entries(workdir: Path) -> list[Path]:
    """The job's folder minus its outputs: plain files and folders, sorted."""
    outputs = workdir / ".jupyter-launch" / "outputs"
    return [path for path in sorted(workdir.rglob("*"))
            if path != outputs and outputs not in path.parents and not path.is_symlink()
            and (path.is_file() or path.is_dir())]


def pack_workdir(workdir: Path) -> bytes:
    """The job's unpacked folder (minus its outputs) as a gzipped tar of plain files and folders."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for path in _workdir_entries(workdir):
            tar.add(path, arcname=path.relative_to(workdir).as_posix(), recursive=False)
    return buf.getvalue()


def workdir_digest(workdir: Path) -> str:
    """A hash of what :func:`pack_workdir` packs (names and contents, not times), so a job image is content-addressed."""
    h = hashlib.sha256()
    for path in _workdir_entries(workdir):
        h.update(path.relative_to(workdir).as_posix().encode() + (b"/" if path.is_dir() else b"") + b"\0")
        if path.is_file():
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            h.update(b"\0")
    return h.hexdigest()


@dataclass
class JobImagePlan:
    """An image for one job folder: its environment image plus the packed folder where the pod's bootstrap reads it
    (``/jl/artifact/artifact.tar.gz``). It has what :class:`~jupyter_launch.images.ImageBuilder` needs of a plan:
    ``settings.base_image``, ``hash``, ``tag`` and ``context_tar()``."""

    settings: BuildSettings  # base_image: the environment image
    base_id: str
    folder_digest: str
    artifact_tar: bytes

    @property
    def hash(self) -> str:
        doc = {"v": BUILDER_VERSION, "kind": "job", "base": self.settings.base_image, "base_id": self.base_id,
               "folder": self.folder_digest}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    @property
    def tag(self) -> str:
        return f"{JOB_IMAGE_REPOSITORY}:{self.hash[:12]}"

    def dockerfile(self) -> str:
        return (f"FROM {self.settings.base_image}\n"
                f"COPY {ARTIFACT_KEY} {ARTIFACT_DIR}/{ARTIFACT_KEY}\n"
                f"LABEL {HASH_LABEL}={self.hash}\n")

    def context_tar(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, data in (("Dockerfile", self.dockerfile().encode()), (ARTIFACT_KEY, self.artifact_tar)):
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()



def extract_outputs(data: bytes, dest: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
            return
        # Python before 3.11.4 (Debian bookworm's 3.11.2, in the agent image) has no extraction filters: only plain
        # files and folders with relative names and no special bits, what the data filter lets through unchanged.
        members = [m for m in tar.getmembers() if (m.isfile() or m.isdir()) and not m.name.startswith("/")
                   and ".." not in m.name.split("/")]
        for m in members:
            m.mode &= 0o755
        tar.extractall(dest, members=members)


class OutputsSplitter:
    """Takes the outputs marker lines out of a pod's log stream and keeps their payload."""

    def __init__(self) -> None:
        self._carry = b""
        self._chunks: list[bytes] = []
        self.outputs: bytes | None = None  # the tar.gz, once its end marker arrived and checked
        self.error: str | None = None

    def reset(self) -> None:
        self._carry, self._chunks, self.outputs, self.error = b"", [], None, None

    def feed(self, data: bytes) -> bytes:
        if self._carry:
            data, self._carry = self._carry + data, b""
        if b"\x1e" not in data:
            return data
        plain: list[bytes] = []
        pos = 0
        start = data.find(OUTPUTS_MARK)
        while start >= 0:
            end = data.find(b"\n", start)
            if end < 0:
                self._carry = data[start:]
                plain.append(data[pos:start])
                return b"".join(plain)
            plain.append(data[pos:start])
            self._take(data[start + len(OUTPUTS_MARK):end])
            pos = end + 1
            start = data.find(OUTPUTS_MARK, pos)
        rest = data[pos:]
        tail = rest.rfind(b"\x1e")
        if tail >= 0 and OUTPUTS_MARK.startswith(rest[tail:]):
            self._carry, rest = rest[tail:], rest[:tail]
        plain.append(rest)
        return b"".join(plain)

    def flush(self) -> bytes:
        data, self._carry = self._carry, b""
        return data

    def _take(self, line: bytes) -> None:
        if line.startswith(b" "):
            self._chunks.append(line[1:])
        elif line.startswith(b"-end "):
            try:
                digest, size = line[5:].split()
                data = base64.b64decode(b"".join(self._chunks), validate=True)
            except ValueError:
                self.error = "the outputs' record is malformed"
                return
            if hashlib.sha256(data).hexdigest().encode() != digest or len(data) != int(size):
                self.error = "the outputs' checksum does not match"
                return
            self.outputs = data
            self._chunks = []

