//! Fault tests that restart the shared services (RabbitMQ, PostgreSQL, the Docker engines),
//! or kill, cut off and fail over the nodes of the clustered broker and registry (`cluster`,
//! on services of their own). They disturb every other test, so `deploy/test.sh` runs this
//! binary on its own, one test at a time, after the others.

mod cluster;
mod hosts;
mod services;
