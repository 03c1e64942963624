#!/usr/bin/env bash
# Installs the Debian packages the project needs, only when absent.
#   run:  the renderer (EGL on Mesa llvmpipe)
#   test: also redis-server (the worker topology test) and Chromium + ChromeDriver (the web page test)
set -euo pipefail
pkgs=(libegl1 libegl-mesa0 libgl1-mesa-dri libgles2)
if [ "${1:-run}" = "test" ]; then
  pkgs+=(redis-server chromium chromium-driver)
fi
need=()
for pkg in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing system packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
