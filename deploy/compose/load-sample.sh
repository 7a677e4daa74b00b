#!/bin/sh
# Loads the sample persons, catalogues, institutions and policies into the compose
# federation's nodes (run inside the coordinator container, which shares their
# loopback). Idempotent: a re-run writes nothing twice.
set -eu
S=/usr/share/yidi
for r in 330100 330200 330300; do
  case $r in 330100) port=7101 ;; 330200) port=7102 ;; *) port=7103 ;; esac
  node=http://127.0.0.1:$port
  yidi admin --node $node person import $S/sample/$r/persons.csv
  yidi admin --node $node catalogue import $S/sample/$r/catalogue.csv
  yidi admin --node $node institution import $S/sample/$r/institutions.csv
  yidi admin --node $node --request-id sample-policy-$r-employee policy publish $S/policies/$r-employee.toml
  yidi admin --node $node --request-id sample-policy-$r-resident policy publish $S/policies/$r-resident.toml
done
