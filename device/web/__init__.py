"""The box's web page: status, meters, knobs, bypass and bundles from a phone, behind a login.

Not part of what plays on stage: it runs in its own process (``pedal-web.service``, as its own
unprivileged user) and reaches the daemon only through the daemon's status socket, whose
commands are answered on the daemon's monitor thread, never on the audio thread.

    python -m device.web serve --config /etc/pedal/pedal.toml [--host 0.0.0.0] [--port 8080]
    python -m device.web passwd [--file /etc/pedal/web-password]

``app.py`` the routes, ``auth.py`` password, sessions, CSRF and login rate limit, ``store.py``
the bundles folder (list, upload, verification), ``static/`` the page (HTML, CSS, plain JS).
"""
