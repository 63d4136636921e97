#!/usr/bin/env bash
# Run the demo: an at-least-once queue against a faulty in-process provider. No server needed.
source "$(dirname "$0")/_venv.sh" ""
exec .venv/bin/idemsend demo "$@"
