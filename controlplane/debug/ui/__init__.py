"""The mesh at a glance: /ui/ on the monitoring port (docs/ui.md).

    model.py   the page model (JSON) from the mesh snapshot, the proxies' sync state and
               the reported traffic: a pure function
    routes.py  the handlers: the static page (static/), and /ui/model.json it polls
"""
