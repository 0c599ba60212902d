//! `surge bench`: a load generator for any OpenAI-compatible server, the autoscaling
//! target advisor, and a fleet simulator for comparing autoscaling policies.

pub mod simulate;
