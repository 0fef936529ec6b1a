//! ModifySettings: the whole payload through `Request::decode`, and a `Settings` document through
//! `Resource::decode` for a resource type picked by the first byte. Never panics; a decoded request
//! re-encodes and decodes back equal (after one normalising pass).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rgcs_protocol::message::{
    self, resource_type as rt, ModificationRequest, ModifySettingsRequest, Request, RequestBase,
    RequestType, Resource,
};
use rgcs_protocol::{gojson, MessageId};

const TYPES: [&str; 13] = [
    rt::MAPPED_VIRTUAL_DISK,
    rt::SCSI_DEVICE,
    rt::MAPPED_DIRECTORY,
    rt::VPMEM_DEVICE,
    rt::COMBINED_LAYERS,
    rt::NETWORK,
    rt::VPCI_DEVICE,
    rt::CONTAINER_CONSTRAINTS,
    rt::SECURITY_POLICY,
    rt::SECURITY_POLICY_FRAGMENT,
    rt::POD_CGROUP_MEMORY_LIMIT,
    "HvSocket",
    "Unknown",
];

fn roundtrip(req: &ModifySettingsRequest) -> ModifySettingsRequest {
    let json = serde_json::to_vec(req).expect("re-encodes");
    gojson::from_slice(&json).expect("re-encoded decodes")
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    // the whole payload
    if let Ok(Request::ModifySettings(req)) = Request::decode(MessageId::MODIFY_SETTINGS, rest) {
        let r1 = roundtrip(&req);
        assert_eq!(roundtrip(&r1), r1);
        let frame = message::encode_request(MessageId::MODIFY_SETTINGS, 1, &RequestBase::default(), &r1)
            .expect("frames");
        assert!(frame.len() > 16);
    }
    // one Settings document for a chosen resource type
    let name = TYPES[usize::from(pick) % TYPES.len()];
    let settings = serde_json::from_slice::<serde_json::Value>(rest).ok().filter(|v| !v.is_null());
    if let Ok(resource) = Resource::decode(name, settings) {
        assert_eq!(resource.resource_type(), name);
        let req = ModifySettingsRequest {
            request: ModificationRequest::new(RequestType::from(name), resource),
        };
        let r1 = roundtrip(&req);
        assert_eq!(roundtrip(&r1), r1);
    }
});
