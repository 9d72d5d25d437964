# xks-bridge %post: the service user and directories; the service is neither started nor
# enabled (configure /etc/xks-bridge/config.toml first).
systemd-sysusers xks-bridge.conf
systemd-tmpfiles --create xks-bridge.conf
if [ "$1" -eq 1 ]; then
    chgrp xks-bridge /etc/xks-bridge/config.toml
    chmod 0640 /etc/xks-bridge/config.toml
fi
systemctl daemon-reload >/dev/null 2>&1 || :
