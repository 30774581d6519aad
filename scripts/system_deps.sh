#!/usr/bin/env bash
# Debian packages the slow tests use: PostgreSQL (team-scale tracking), Chromium (dashboard in a
# real browser), TeX (the LaTeX table compiles). Installed once; skipped when already present.
set -uo pipefail
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v pdflatex >/dev/null || need+=(texlive-latex-base texlive-latex-recommended)
[ -x /usr/lib/postgresql/*/bin/initdb ] 2>/dev/null || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
      || echo "system_deps: could not install ${need[*]}; the slow tests that need them will skip" >&2
  else
    echo "system_deps: not root; missing ${need[*]}; the slow tests that need them will skip" >&2
  fi
fi
