#!/usr/bin/env bash
# The GPU check lives in bench/ with the other benchmarks; this is the path the team's device
# instructions name. Same flags: bash bench/gpu_check.sh --help.
exec bash "$(dirname "$0")/../bench/gpu_check.sh" "$@"
