// The demo chat client (see web/README).
