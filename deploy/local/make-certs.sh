#!/usr/bin/env bash
# Certificates of the local development federation (deploy/local/*.toml), made with
# `yidi certs` into yidi-data/certs/ (git-ignored; keys 0600, directories 0700):
#
#   yidi-data/certs/ca/                  the federation CA (ca.crt, ca.key, revoked.txt)
#   yidi-data/certs/<region>/            node-<region>.{crt,key} + ca.crt, for each city
#   yidi-data/certs/330000/              coordinator-330000.{crt,key} + ca.crt
#   yidi-data/certs/operators/           operator-<region>-admin for each city,
#                                        operator-330000-clearing for the coordinator
#   yidi-data/certs/hospitals/           institution-<region>-<code> for the first
#                                        hospital of each city's sample institutions
#
# Run from the repository root:  bash deploy/local/make-certs.sh
# It refuses to replace an existing CA (delete yidi-data/certs to start over).
# YIDI overrides the binary (default: cargo run --release --quiet --).
set -euo pipefail

yidi() {
    if [ -n "${YIDI:-}" ]; then "$YIDI" "$@"; else cargo run --release --quiet -- "$@"; fi
}

dir=yidi-data/certs
yidi certs ca --out "$dir/ca"
for r in 330100 330200 330300; do
    yidi certs node --ca "$dir/ca" --out "$dir/$r" --region "$r"
    yidi certs operator --ca "$dir/ca" --out "$dir/operators" --region "$r" --role admin
    code=$(sed -n '2p' "deploy/sample/$r/institutions.csv" | cut -d, -f1)
    yidi certs hospital --ca "$dir/ca" --out "$dir/hospitals" --region "$r" --institution "$code"
done
yidi certs coordinator --ca "$dir/ca" --out "$dir/330000" --region 330000
yidi certs operator --ca "$dir/ca" --out "$dir/operators" --region 330000 --role clearing

cat <<EOF

Certificates are in $dir. Start each node with its config in deploy/local/, then act as
Hangzhou's operator:

  export YIDI_CA=$dir/ca/ca.crt
  export YIDI_CERT=$dir/operators/operator-330100-admin.crt
  export YIDI_KEY=$dir/operators/operator-330100-admin.key
  yidi admin --node https://127.0.0.1:7101 info
EOF
