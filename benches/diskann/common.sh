# Helpers shared by compare.sh and build_rounds.sh (sourced; VENVS must be set).

# venv NAME PACKAGE: the Python of a venv holding PACKAGE and numpy, created on first use.
venv() {
  if [ ! -x "$VENVS/$1/bin/python" ]; then
    python3 -m venv "$VENVS/$1" && "$VENVS/$1/bin/pip" install -q "$2" numpy
  fi
  echo "$VENVS/$1/bin/python"
}

# rss FILE: peak RSS in bytes from a `/usr/bin/time -v` report.
rss() { grep 'Maximum resident' "$1" | awk '{print $6 * 1024}'; }

command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
