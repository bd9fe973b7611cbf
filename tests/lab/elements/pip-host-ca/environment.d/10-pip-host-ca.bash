# Inside the chroot only (the in-target phases mount /tmp/in_target.d).
# REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE, inherited from the host through
# "sudo -E chroot", would override pip's --cert: all of them are set.
if [ -e /tmp/in_target.d/pip-host-ca.crt ]; then
    export PIP_CERT=/tmp/in_target.d/pip-host-ca.crt
    export REQUESTS_CA_BUNDLE=$PIP_CERT
    export CURL_CA_BUNDLE=$PIP_CERT
    export SSL_CERT_FILE=$PIP_CERT
fi
