#!/usr/bin/env bash
# Install what the browser test (tests/browser) needs, without letting any
# tool download a browser: Debian's chromium (+ chromium-driver) from apt,
# and playwright-core from npm (it never downloads browsers; the test points
# it at /usr/bin/chromium). Idempotent; run as root (or with apt rights).
set -euo pipefail
cd "$(dirname "$0")/.."
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-browser-deps: need root to apt-get install $*" >&2
        return 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [ ! -x /usr/bin/chromium ] || ! command -v chromedriver >/dev/null 2>&1; then
    echo "== installing chromium and chromium-driver (apt)"
    apt_install chromium chromium-driver
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "== installing nodejs and npm (apt)"
    apt_install nodejs npm
fi

if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
    echo "install-browser-deps: playwright-core needs node >= 20, found $(node --version)" >&2
    exit 1
fi

echo "== npm install in tests/browser (playwright-core only)"
cd tests/browser
if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
else
    npm install --no-audit --no-fund --loglevel=error
fi
/usr/bin/chromium --version
node --version
