# What zsh's completion offers for a command line, one candidate a line.
# Usage: zsh -f zsh_complete.zsh FPATH_DIR "command line to complete"
#
# An interactive zsh in a pseudo-terminal (zsh/zpty) with the completion
# functions of FPATH_DIR types the line and a Tab; compadd is wrapped to
# print every candidate it is given ("HIT:<candidate>").
zmodload zsh/zpty || exit 2
zpty z zsh -f -i
local line
zpty -w z "PROMPT= ; RPROMPT= ; fpath=($1 \$fpath); autoload -U compinit; compinit -u -D"
zpty -w z "zstyle ':completion:*' list-grouped false; zstyle ':completion:*' insert-tab false"
zpty -w z 'compadd () {
  if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return $?; fi
  typeset -a __hits
  builtin compadd -A __hits "$@"
  local h; for h in $__hits; do print -r -- "HIT:$h"; done
}'
zpty -w z "bindkey '^I' complete-word; zle -C complete-word .complete-word _main_complete"
# The sentinels are printed as Q_${:-...}: their echo as typed does not match.
zpty -w z 'print -r -- Q_${:-READY}'
zpty -r z line '*Q_READY*' || exit 2
zpty -w -n z "$2"$'\t'
zpty -w z $'\C-u''print -r -- Q_${:-DONE}'
local out
zpty -r z out '*Q_DONE*' || exit 2
for line in ${(f)out}; do
  [[ $line == *HIT:* ]] && print -r -- "${${line##*HIT:}%$'\r'}"
done
zpty -d z
