"""The local web page: its JSON API and guard, request limits, and teaching jobs run by warm workers."""
