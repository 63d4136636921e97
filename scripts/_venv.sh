# Sourced by demo.sh and test.sh: make .venv (Python 3.11+) and install idemsend into it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  py=""
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      py="$candidate"; break
    fi
  done
  [ -n "$py" ] || { echo "idemsend needs Python 3.11 or newer" >&2; exit 1; }
  "$py" -m venv .venv
fi
stamp=".venv/.idemsend-installed${extras:+-$extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}" 2>&1 \
    | grep -v '^WARNING: Location' || true
  .venv/bin/python -c 'import idemsend' && touch "$stamp"
fi
