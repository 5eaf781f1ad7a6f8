#!/usr/bin/env bash
# Installs everything layerlmc needs on a fresh Debian machine with Python 3.11:
# Debian's Fashion-MNIST and Jargon File packages, a virtual environment in .venv, the CPU build of
# torch 2.13.0 and layerlmc itself (editable, with the test tools, the Hugging Face and Ray extras).
# `install.sh --test` also installs what only the tests use: Debian's chromium, in which the report
# page's test renders it headless. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

debian_packages=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || debian_packages+=(dataset-fashion-mnist)
# the built-in text corpus of the language-model studies
[ -f /usr/share/doc/jargon-text/jargon.txt.gz ] || debian_packages+=(jargon-text)
# Debian's own python3 needs python3-venv to make virtual environments
"$PYTHON" -c "import ensurepip" 2>/dev/null || debian_packages+=(python3-venv)
if [ "${1:-}" = "--test" ]; then
    command -v chromium >/dev/null 2>&1 || debian_packages+=(chromium)
elif [ -n "${1:-}" ]; then
    echo "install.sh: unknown option $1 (the only one is --test)" >&2
    exit 2
fi
if [ ${#debian_packages[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${debian_packages[@]}" >/dev/null
    else
        echo "install.sh: no apt-get here; install ${debian_packages[*]} by hand (see README)" >&2
    fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,hf,ray]'
echo "install.sh: layerlmc is installed in .venv ($(.venv/bin/layerlmc --version))"
