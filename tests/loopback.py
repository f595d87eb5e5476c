"""The base URL of in-process API clients: the API answers only loopback Host names
(TestClient's default, `testserver`, gets 400 like any DNS-rebound name)."""

LOOPBACK = "http://127.0.0.1"
