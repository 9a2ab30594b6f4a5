# fish completion for portwatchctl(1)

set -l commands events ports status rescan reload metrics scan expect
# journalctl's forms; a date or a time is typed out.
set -l when now today yesterday tomorrow -10min -1h -1d -1w 10m 1h 1d 1w

complete -c portwatchctl -f
complete -c portwatchctl -l socket -r -F -d "the daemon's control socket"
complete -c portwatchctl -s h -l help -d 'show help and exit'
complete -c portwatchctl -n "not __fish_seen_subcommand_from $commands" -l version -d 'show the version and exit'

complete -c portwatchctl -n "not __fish_seen_subcommand_from $commands" -a events -d 'show the recorded open/close events'
complete -c portwatchctl -n "not __fish_seen_subcommand_from $commands" -a ports -d 'show the listening ports now'
complete -c portwatchctl -n "not __fish_seen_subcommand_from $commands" -a status -d "show the daemon's state"
complete -c portwatchctl -n "not __fish_seen_subcommand_from $commands" -a rescan -d 'ask the daemon to scan now (root)'
complete -c portwatchctl -n "not __fish_seen_subcommand_from $commands" -a reload -d 'make the daemon reload its configuration and wait (root)'
complete -c portwatchctl -n "not __fish_seen_subcommand_from $commands" -a metrics -d "print the daemon's metrics (Prometheus text format)"
complete -c portwatchctl -n "not __fish_seen_subcommand_from $commands" -a scan -d 'scan once in this process, without the daemon'
complete -c portwatchctl -n "not __fish_seen_subcommand_from $commands" -a expect -d 'print [[expect]] rules accepting what listens now (--suggest)'

set -l events "__fish_seen_subcommand_from events"
complete -c portwatchctl -n $events -l since -x -a "$when" -d 'only events at or after WHEN'
complete -c portwatchctl -n $events -l until -x -a "$when" -d 'only events at or before WHEN'
complete -c portwatchctl -n $events -l after-seq -x -d 'only events after seq N'
complete -c portwatchctl -n $events -l limit -x -d 'at most N events'
complete -c portwatchctl -n $events -l type -x -a 'opened closed restarted owner_changed transient' -d 'only events of this type'
complete -c portwatchctl -n $events -l proto -x -a 'tcp udp' -d 'only this protocol'
complete -c portwatchctl -n $events -l port -x -d 'only this port'
complete -c portwatchctl -n $events -l json -d 'one JSON object per line'
complete -c portwatchctl -n $events -l host-only -d "only the host's network namespace"
complete -c portwatchctl -n $events -s f -l follow -d 'keep printing new events'
complete -c portwatchctl -n $events -l local -d 'times in local time, not UTC'
complete -c portwatchctl -n $events -l no-legend -d 'no header line'

set -l ports "__fish_seen_subcommand_from ports"
complete -c portwatchctl -n $ports -l host-only -d "only the host's network namespace"
complete -c portwatchctl -n $ports -l unexpected -d 'only listeners no [[expect]] rule accepts'
complete -c portwatchctl -n $ports -l json -d 'a JSON list of objects'
complete -c portwatchctl -n $ports -l no-legend -d 'no header line'

# Where a listener lives, for events, ports and expect; the named namespaces from `ip netns`.
set -l placed "__fish_seen_subcommand_from events ports expect"
complete -c portwatchctl -n $placed -l netns -x -a '(ip netns list 2>/dev/null | string replace -r " .*" "")' -d 'only this network namespace (name or inode)'
complete -c portwatchctl -n $placed -l container -x -d 'only this container (name, id or id prefix)'

set -l expect "__fish_seen_subcommand_from expect"
complete -c portwatchctl -n $expect -l suggest -d 'print rules accepting every listener now'
complete -c portwatchctl -n $expect -l host-only -d "only the host's network namespace"
complete -c portwatchctl -n $expect -l unexpected -d 'only listeners no [[expect]] rule accepts yet'

set -l status_ "__fish_seen_subcommand_from status"
complete -c portwatchctl -n $status_ -l json -d 'one JSON object'
complete -c portwatchctl -n $status_ -l local -d 'times in local time, not UTC'

set -l scan "__fish_seen_subcommand_from scan"
complete -c portwatchctl -n $scan -l backend -x -a 'auto netlink proc' -d 'how to read the sockets'
complete -c portwatchctl -n $scan -l json -d 'a JSON list of objects'
complete -c portwatchctl -n $scan -l no-owners -d 'do not look up processes'
complete -c portwatchctl -n $scan -l no-legend -d 'no header line'
