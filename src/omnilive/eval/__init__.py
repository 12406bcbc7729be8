"""`omnilive eval`: a client that scores any OpenAI-compatible server on local benchmark files.

It talks to the server only over HTTP (the openai client), so it imports no server, engine or
model code: datasets.py reads the public layouts, tasks.py sends each task's requests and scores
the replies with scoring_*.py (the reference harnesses' rules), runner.py runs it all and
writes predictions and results.
"""
