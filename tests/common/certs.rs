//! Test certificates, made by the tests with rcgen (no key is ever committed): a root
//! CA, an intermediate CA under it, server certificates for `localhost` and
//! `127.0.0.1` issued by the intermediate (so `cert` holds a chain), client
//! certificates, a second unrelated CA, and an expired server certificate. All ECDSA
//! P-256, written as PEM files into a temporary directory that lives as long as the
//! [`Pki`].

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

/// A CA that can issue certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, PEM.
    pub pem: String,
}

impl Ca {
    /// A self-signed root CA named `name`.
    pub fn root(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let params = ca_params(name);
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An intermediate CA under this one.
    pub fn intermediate(&self, name: &str) -> Ca {
        let key = KeyPair::generate().expect("intermediate key");
        let params = ca_params(name);
        let cert = params.signed_by(&key, &self.issuer).expect("intermediate");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `localhost` and `127.0.0.1` with `serial`, valid from
    /// `not_before` to `not_after` (years): (certificate PEM, key PEM).
    pub fn server(&self, serial: u64, years: (i32, i32)) -> (String, String) {
        self.server_for(serial, &["localhost", "127.0.0.1"], years)
    }

    /// A server certificate for `names` (the first is its CN) with `serial`.
    pub fn server_for(&self, serial: u64, names: &[&str], years: (i32, i32)) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("server params");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.serial_number = Some(SerialNumber::from(serial.to_be_bytes().to_vec()));
        params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &self.issuer).expect("server cert");
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate whose subject CN is `cn`: (certificate PEM, key PEM).
    pub fn client(&self, cn: &str) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("client key");
        let cert = params.signed_by(&key, &self.issuer).expect("client cert");
        (cert.pem(), key.serialize_pem())
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    // Stricter verifiers (Python 3.13's default) want the issuer's key identifier.
    params.use_authority_key_identifier_extension = true;
    params
}

/// A private PKI on disk: `ca.pem` (the root clients trust), `server.pem` (the leaf
/// and the intermediate that issued it), `server.key`, `client.pem`/`client.key`
/// (issued by the intermediate, CN `backend-1`), `other-client.pem`/`.key` (from an
/// unrelated CA), `client-ca.pem` (the root and the intermediate, for `client_ca`).
pub struct Pki {
    dir: tempfile::TempDir,
    pub root: Ca,
    pub intermediate: Ca,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = Ca::root("Switchboard Test Root CA");
        let intermediate = root.intermediate("Switchboard Test Intermediate CA");
        let pki = Pki {
            dir,
            root,
            intermediate,
        };
        pki.write("ca.pem", &pki.root.pem);
        pki.write(
            "client-ca.pem",
            &format!("{}{}", pki.root.pem, pki.intermediate.pem),
        );
        pki.issue_server(1, "server");
        let (cert, key) = pki.intermediate.client("backend-1");
        pki.write("client.pem", &format!("{cert}{}", pki.intermediate.pem));
        pki.write("client.key", &key);
        let (cert, key) = Ca::root("Somebody Else's CA").client("intruder");
        pki.write("other-client.pem", &cert);
        pki.write("other-client.key", &key);
        pki
    }

    /// Issues `name.pem` (leaf and intermediate) and `name.key` with `serial`.
    pub fn issue_server(&self, serial: u64, name: &str) {
        let (cert, key) = self.intermediate.server(serial, (2024, 2099));
        self.write(
            &format!("{name}.pem"),
            &format!("{cert}{}", self.intermediate.pem),
        );
        self.write(&format!("{name}.key"), &key);
    }

    /// Issues `name.pem` (leaf and intermediate) and `name.key` for `dns_names`.
    pub fn issue_server_for(&self, serial: u64, name: &str, dns_names: &[&str]) {
        let (cert, key) = self
            .intermediate
            .server_for(serial, dns_names, (2024, 2099));
        self.write(
            &format!("{name}.pem"),
            &format!("{cert}{}", self.intermediate.pem),
        );
        self.write(&format!("{name}.key"), &key);
    }

    /// Issues an expired `name.pem`/`name.key`.
    pub fn issue_expired(&self, name: &str) {
        let (cert, key) = self.intermediate.server(99, (2020, 2021));
        self.write(
            &format!("{name}.pem"),
            &format!("{cert}{}", self.intermediate.pem),
        );
        self.write(&format!("{name}.key"), &key);
    }

    /// Writes `name` in the directory (atomically: a reload never reads half a file).
    pub fn write(&self, name: &str, text: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write PEM");
        std::fs::rename(&tmp, self.path(name)).expect("rename PEM");
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect("read PEM")
    }

    /// `[tls]` serving `server.pem` and `server.key`, with `extra` lines.
    pub fn tls_section(&self, extra: &str) -> String {
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n{extra}\n",
            self.path("server.pem"),
            self.path("server.key")
        )
    }
}
