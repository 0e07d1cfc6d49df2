//! Fault tests that restart the shared services (RabbitMQ, PostgreSQL, the Docker engines).
//! They disturb every other test, so `deploy/test.sh` runs this binary on its own, one test
//! at a time, after the others.

mod hosts;
mod services;
