#!/usr/bin/env bash
# Sourced by the benchmark scripts: `need_tools wrk psql openssl` installs what is missing from Debian's packages
# (as root, or with sudo), or says how to install it and fails.

need_tools() {
  local missing=() tool
  for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local packages=()
  for tool in "${missing[@]}"; do
    case "$tool" in
      psql) packages+=(postgresql-client) ;;
      *) packages+=("$tool") ;;
    esac
  done
  if command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then
    echo "bench: installing ${packages[*]}" >&2
    local root=(); [ "$(id -u)" = 0 ] || root=(sudo)
    "${root[@]}" apt-get update -qq && "${root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  else
    echo "bench: ${missing[*]} not found; install them (Debian: apt-get install ${packages[*]})" >&2
    return 1
  fi
}
