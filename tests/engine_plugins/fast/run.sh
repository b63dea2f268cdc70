#!/bin/sh
# The cheapest possible plugin: ignore the request, answer ok.
cat >/dev/null
printf '{"status":"ok","result":"fast"}\n'
