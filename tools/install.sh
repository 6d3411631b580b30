#!/usr/bin/env bash
# Builds the release binary, puts it on PATH and installs shell completions for bash, zsh and
# fish (ArgumentParser's `qlora --generate-completion-script SHELL`).
#
#   tools/install.sh                 # into ~/.local (bin/qlora, share/bash-completion/…, …)
#   PREFIX=/usr/local tools/install.sh
#
# Run tools/setup.sh first on a fresh machine (OpenBLAS, OpenMP and the bundled model).
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${PREFIX:-$HOME/.local}
swift build -c release --product qlora
bin="$(swift build -c release --show-bin-path)/qlora"
install -d "$prefix/bin"
install -m 755 "$bin" "$prefix/bin/qlora"
echo "installed $prefix/bin/qlora ($("$prefix/bin/qlora" --version))"

bash_dir="$prefix/share/bash-completion/completions"
zsh_dir="$prefix/share/zsh/site-functions"
fish_dir="$prefix/share/fish/vendor_completions.d"
install -d "$bash_dir" "$zsh_dir" "$fish_dir"
"$prefix/bin/qlora" --generate-completion-script bash > "$bash_dir/qlora"
"$prefix/bin/qlora" --generate-completion-script zsh > "$zsh_dir/_qlora"
"$prefix/bin/qlora" --generate-completion-script fish > "$fish_dir/qlora.fish"
echo "completions: $bash_dir/qlora, $zsh_dir/_qlora, $fish_dir/qlora.fish"

case ":$PATH:" in
    *":$prefix/bin:"*) ;;
    *) echo "note: $prefix/bin is not on PATH; add: export PATH=\"$prefix/bin:\$PATH\"" ;;
esac
if [ "$prefix" = "$HOME/.local" ]; then
    echo "zsh: add $zsh_dir to fpath (fpath=($zsh_dir \$fpath) before compinit) if it is not there"
fi
