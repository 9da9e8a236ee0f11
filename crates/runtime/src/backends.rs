//! The backend for each isolation: [`backend_for`].
//!
//! Apart from [`crate::backend`] (the trait) so that neither backend's module and the trait's
//! import each other.

use crate::backend::{Backend, Isolation};
use crate::config::RuntimeConfig;

/// The backend that runs enclaves under `isolation`, set up as `config` says.
pub fn backend_for(isolation: Isolation, config: &RuntimeConfig) -> Box<dyn Backend> {
    match isolation {
        Isolation::Process => Box::new(crate::sandbox::ProcessBackend),
        Isolation::Vm => Box::new(crate::vmbackend::VmBackend::new(config.vm.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_isolation_has_its_backend() {
        let config = RuntimeConfig::default();
        for iso in [Isolation::Process, Isolation::Vm] {
            assert_eq!(backend_for(iso, &config).isolation(), iso);
        }
        let process = backend_for(Isolation::Process, &config);
        assert!(process.needs_netns() && process.replaces_init());
        assert_eq!(process.host_link(), crate::backend::HostLink::Broker);
        let vm = backend_for(Isolation::Vm, &config);
        assert!(!vm.needs_netns() && !vm.replaces_init());
        assert_eq!(vm.host_link(), crate::backend::HostLink::Device);
    }

    #[test]
    fn isolation_names_parse_with_a_typed_error() {
        assert_eq!("vm".parse::<Isolation>(), Ok(Isolation::Vm));
        assert_eq!("process".parse::<Isolation>(), Ok(Isolation::Process));
        let e = "kvm".parse::<Isolation>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown isolation \"kvm\" (expected process or vm)"
        );
    }
}
