"""`tutorlm serve`: an OpenAI-compatible server where the student answers and asks the teacher only when it must.

    protocol   request and response shapes, parsing, usage, SSE
    workers    model worker threads: a local model on the engine, a remote teacher
    route      the modes (student, teacher, escalate, step): agreement and hesitation decide who answers
    calibrate  `tutorlm serve --calibrate`: the escalation threshold for a target teacher share
    app        the FastAPI app and `serve(config)`
"""
