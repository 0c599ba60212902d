//! What an autoscaler model sees of the fleet each tick, and the trait the KPA and
//! KEDA + HPA models implement.

/// The fleet's signals at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Observation {
    /// Simulated seconds since the start of the trace.
    pub now: f64,
    /// Replicas that receive requests.
    pub ready: u32,
    /// Replicas asked for and not removed (the Deployment's `spec.replicas`).
    pub spec: u32,
    /// Requests in the system, buffered or held by a replica.
    pub concurrency: f64,
    /// `sum(vllm:num_requests_waiting)`.
    pub queue_depth: f64,
    /// `sum(surge_saturation)`.
    pub saturation: f64,
}

/// An autoscaler model, called once per simulation tick.
pub trait Autoscaler {
    /// Takes in the tick's signals; returns a new replica count when the model decides
    /// to change it (or to confirm it).
    fn observe(&mut self, obs: &Observation) -> Option<u32>;
}
