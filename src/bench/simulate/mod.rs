//! `surge bench simulate`: replays a request-arrival trace through models of Knative's
//! KPA and of KEDA + HPA, using a measured capacity curve and cold start.
