"""The router: picks a worker for each request through a profile of filters → scorers → picker."""
