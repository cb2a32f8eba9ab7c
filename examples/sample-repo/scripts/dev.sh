#!/bin/sh
set -e
python -m inventory.cli
