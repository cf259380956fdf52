# Ergonomic entry points. `just --list` shows them.
# Recipes use the project's virtual environment when there is one, else what is on PATH.

bin := if path_exists(".venv/bin/python") == "true" { justfile_directory() / ".venv/bin/" } else { "" }

# list the recipes
default:
    @just --list

# create .venv and install the project with its test tools
install:
    python3 -m venv .venv
    .venv/bin/pip install -e '.[test]'

# run the test suite (RabbitMQ from DAGGER_ADAPTER_AMQP_URL or 127.0.0.1:5672; Valkey is started by the tests when DAGGER_ADAPTER_VALKEY_URL is unset)
test *args:
    {{bin}}python -m pytest {{args}}

# property-based fuzzing of the decoder and parameter validation, long profile (the default suite runs a short one)
fuzz *args:
    HYPOTHESIS_PROFILE=fuzz {{bin}}python -m pytest tests/abuse/test_fuzz.py {{args}}

# ruff (lint + format check) and mypy (strict on schemas/ and topology/)
lint:
    {{bin}}ruff check .
    {{bin}}ruff format --check .
    {{bin}}mypy

# format the code
fmt:
    {{bin}}ruff format .
    {{bin}}ruff check --fix .

# run the worker (the main job); configuration from DAGGER_ADAPTER_* or --config FILE
worker *args:
    {{bin}}dagger-adapter worker {{args}}

# declare the exchanges and queues (safe to run twice), then show them
topology:
    {{bin}}dagger-adapter topology declare
    {{bin}}dagger-adapter topology show

# write JSON Schema and AsyncAPI documents to schema-out/
schema:
    {{bin}}dagger-adapter schema export -o schema-out

# fleet under faults (private RabbitMQ node, Valkey, worker processes); every task id accounted for. --profile short|long
chaos *args:
    {{bin}}python -m tests.chaos {{args}}

# run the benchmark (ratio against a baseline in the same process run)
bench *args:
    {{bin}}python -m bench {{args}}
