#!/usr/bin/env bash
# Set up everything (idempotent) and run the demo or the test suite.
#   bash run.sh demo [demo flags]   # Fashion-MNIST: released base -> expand 2x (ScaleNet + baselines) -> report
#   bash run.sh test [pytest args]  # the test suite (what CI runs)
#   bash run.sh test -m "not e2e"   # the fast subset: every module's unit tests, without the end-to-end runs
#                                   # (entry points, subprocesses, full-size models; tests/conftest.py)
set -euo pipefail
cd "$(dirname "$0")"
what="${1:-demo}"; shift || true
VENV="${SCALENET_VENV:-.venv}"
PY="${PYTHON:-python3}"

need_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. Fashion-MNIST from Debian (IDX files under /usr/share/datasets/fashion-mnist).
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && \
   [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte ]; then
  echo "[setup] installing Debian package dataset-fashion-mnist"
  need_root apt-get update -qq
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
fi
# The decoder LM's text corpus (strfile databases under /usr/share/games/fortunes).
if [ ! -e /usr/share/games/fortunes/fortunes.dat ]; then
  echo "[setup] installing Debian package fortunes"
  need_root apt-get update -qq
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fortunes
fi

# 2. Virtual environment with the package (tests add torch/timm for the parity checks).
extras=""; [ "$what" = test ] && extras="[test]"
stamp="$VENV/.installed$(echo "$extras" | tr -d '[]')-$(sha1sum setup.py | cut -c1-12)"
if [ ! -e "$stamp" ]; then
  echo "[setup] creating $VENV and installing scalenet_jax$extras (first run only; a few minutes)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".$extras"
  touch "$stamp"
fi

export PYTHONUNBUFFERED=1
case "$what" in
  demo) exec "$VENV/bin/python" -m scalenet_jax.demo "$@" ;;
  # worksteal: the few minute-long end-to-end tests would otherwise leave one worker idle at the end.
  test) exec "$VENV/bin/python" -m pytest -q -rs -n 2 --dist worksteal --durations=15 -p no:cacheprovider tests "$@" ;;
  *) echo "usage: bash run.sh demo|test [args]" >&2; exit 2 ;;
esac
