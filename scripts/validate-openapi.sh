#!/usr/bin/env bash
# Validates an OpenAPI document (a file) with the independent Python `openapi-spec-validator`.
# The validator goes into the same venv as scripts/validate-manifests.sh
# (${XDG_CACHE_HOME:-$HOME/.cache}/hookgate-venv), installed from PyPI only when missing.
#   Usage: scripts/validate-openapi.sh FILE      Environment: HOOKGATE_VENV (venv path).
set -euo pipefail

FILE=${1:?usage: validate-openapi.sh FILE}
VENV=${HOOKGATE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/hookgate-venv}
REQ="openapi-spec-validator==0.9.0"

if ! { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import openapi_spec_validator' 2>/dev/null; }; then
    echo "validate-openapi: installing $REQ into $VENV" >&2
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$REQ"
fi

"$VENV/bin/python" - "$FILE" <<'PY'
import json, sys
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator

with open(sys.argv[1]) as f:
    spec = json.load(f)
assert spec.get("openapi", "").startswith("3.1"), f"not OpenAPI 3.1: {spec.get('openapi')!r}"
validate(spec, cls=OpenAPIV31SpecValidator)
print(f"validate-openapi: {sys.argv[1]}: valid OpenAPI {spec['openapi']} ({len(spec['paths'])} paths)")
PY
