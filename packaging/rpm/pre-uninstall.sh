# xks-bridge %preun: on erase (not upgrade), stop and disable the service.
if [ "$1" -eq 0 ]; then
    systemctl disable --now xks-bridge.service >/dev/null 2>&1 || :
fi
