"""`omnilive eval`: a client that scores any OpenAI-compatible server on local benchmark files.

It talks to the server only over HTTP (the openai client), so it imports no server, engine or
model code: datasets.py reads the public layouts, scoring_*.py re-implement the reference
harnesses' scoring, runner.py sends the requests and writes predictions and results.
"""
