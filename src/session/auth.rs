//! AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN; the password check itself is the
//! driver's ([`Action::Authenticate`]), or a constant-time comparison for the fixed relay
//! login.

use super::checks::Wait;
use super::{Action, Phase, Session};
use crate::policy::AuthMode;
use crate::policy::auth::{
    AuthOutcome, AuthRequest, Credentials, SaslError, constant_time_eq, decode_login_line, decode_plain,
};
use crate::util::time::Now;
use crate::wire::Reply;

/// Where an AUTH exchange stands while it reads the client's next line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslStep {
    /// PLAIN without an initial response: the whole message comes next.
    Plain,
    /// LOGIN: the user name comes next.
    LoginUser,
    /// LOGIN: the password comes next.
    LoginPassword,
}

/// Who authenticated.
#[derive(Debug, Clone)]
pub struct Identity {
    pub login: String,
    /// The mailbox's Maildir (`<postoffice>/<mailbox>`) for a directory login; `None` for the
    /// fixed relay login.
    pub maildir: Option<String>,
}

impl Session {
    /// True when AUTH may be used right now (EHLO advertises it).
    pub(super) fn auth_available(&self) -> bool {
        let p = &self.cfg.policy;
        let configured = p.auth_directory || p.auth_fixed.is_some();
        configured
            && match self.cfg.auth_mode {
                AuthMode::Always => true,
                AuthMode::Never => false,
                AuthMode::TlsOnly => self.tls.is_some(),
            }
    }

    pub(super) fn auth_command(&mut self, mechanism: &str, initial: Option<&str>) {
        let p = &self.cfg.policy;
        if self.cfg.auth_mode == AuthMode::Never || !(p.auth_directory || p.auth_fixed.is_some()) {
            return self.reply_error(Reply::new(503, "5.5.1", "Error: authentication not enabled"));
        }
        if !self.esmtp {
            return self.reply_error(Reply::new(503, "5.5.1", "Error: send EHLO first"));
        }
        if self.auth.is_some() {
            return self.reply_error(Reply::new(503, "5.5.1", "Error: already authenticated"));
        }
        if self.tx.envelope.is_some() {
            return self.reply_error(Reply::new(503, "5.5.1", "Error: AUTH not permitted during a mail transaction"));
        }
        if self.cfg.auth_mode == AuthMode::TlsOnly && self.tls.is_none() {
            // RFC 4954 §6.
            return self.reply_error(Reply::new(
                538,
                "5.7.11",
                "Error: encryption required for requested authentication mechanism",
            ));
        }
        if mechanism.eq_ignore_ascii_case("PLAIN") {
            match initial {
                // RFC 4954 §4: "=" is an empty initial response.
                Some("=") | None => {
                    crate::wire::write_reply(&mut self.out, 334, "", "");
                    self.phase = Phase::Sasl(SaslStep::Plain);
                }
                Some(ir) => match decode_plain(ir) {
                    Ok(c) => self.check_credentials(c),
                    Err(e) => self.sasl_failed(e),
                },
            }
        } else if mechanism.eq_ignore_ascii_case("LOGIN") {
            match initial {
                Some(ir) => match decode_login_line(ir).map(String::from_utf8) {
                    Ok(Ok(user)) => self.ask_password(user),
                    Ok(Err(_)) => self.sasl_failed(SaslError::Malformed),
                    Err(e) => self.sasl_failed(e),
                },
                None => {
                    // "Username:"
                    crate::wire::write_reply(&mut self.out, 334, "", "VXNlcm5hbWU6");
                    self.phase = Phase::Sasl(SaslStep::LoginUser);
                }
            }
        } else {
            self.reply_error(Reply::new(504, "5.5.4", "Error: unrecognized authentication type"));
        }
    }

    fn ask_password(&mut self, user: String) {
        self.sasl_user = Some(user);
        // "Password:"
        crate::wire::write_reply(&mut self.out, 334, "", "UGFzc3dvcmQ6");
        self.phase = Phase::Sasl(SaslStep::LoginPassword);
    }

    /// A response line of the exchange.
    pub(super) fn sasl_line(&mut self, _now: Now, step: SaslStep, line: &[u8]) {
        self.phase = Phase::Command;
        let Ok(line) = std::str::from_utf8(line) else { return self.sasl_failed(SaslError::BadBase64) };
        match step {
            SaslStep::Plain => match decode_plain(line) {
                Ok(c) => self.check_credentials(c),
                Err(e) => self.sasl_failed(e),
            },
            SaslStep::LoginUser => match decode_login_line(line).map(String::from_utf8) {
                Ok(Ok(user)) if !user.is_empty() => self.ask_password(user),
                Ok(_) => self.sasl_failed(SaslError::Malformed),
                Err(e) => self.sasl_failed(e),
            },
            SaslStep::LoginPassword => {
                let user = self.sasl_user.take().unwrap_or_default();
                match decode_login_line(line) {
                    Ok(password) => self.check_credentials(Credentials { login: user, password }),
                    Err(e) => self.sasl_failed(e),
                }
            }
        }
    }

    fn sasl_failed(&mut self, e: SaslError) {
        self.sasl_user = None;
        let r = match e {
            SaslError::Cancelled => Reply::new(501, "5.0.0", "Error: authentication cancelled"),
            SaslError::BadBase64 => Reply::new(501, "5.5.2", "Error: cannot decode response"),
            _ => Reply::new(535, "5.7.8", "Error: authentication credentials invalid"),
        };
        self.reply_error(r);
    }

    /// The fixed relay login is compared here, in constant time; a directory login goes to
    /// the verifier.
    fn check_credentials(&mut self, c: Credentials) {
        let p = self.cfg.policy.clone();
        if let Some((user, pass)) = &p.auth_fixed {
            let user_ok = constant_time_eq(c.login.as_bytes(), user.as_bytes());
            if user_ok || !p.auth_directory {
                let ok = user_ok & constant_time_eq(&c.password, pass.as_bytes());
                self.auth_result(if ok { AuthOutcome::Success } else { AuthOutcome::Failure }, c.login.clone(), None);
                return;
            }
        }
        let (hash, maildir) = match self.directory.mailbox_for_login(&c.login) {
            Some((mb, maildir)) if !mb.disabled => (mb.password_hash.clone(), Some(maildir.to_string())),
            _ => (None, None),
        };
        self.wait = Some(Wait::Auth { login: c.login.clone(), maildir });
        self.phase = Phase::Waiting;
        self.actions.push_back(Action::Authenticate(Box::new(AuthRequest { credentials: c, hash })));
    }

    /// The driver's answer to [`Action::Authenticate`].
    pub fn auth_done(&mut self, now: Now, outcome: AuthOutcome) {
        let Some(Wait::Auth { login, maildir }) = self.wait.take() else { return };
        if self.phase != Phase::Waiting {
            return;
        }
        self.phase = Phase::Command;
        self.auth_result(outcome, login, maildir);
        self.wait_for(now, self.cfg.command_timeout);
        self.process_pending(now);
    }

    fn auth_result(&mut self, outcome: AuthOutcome, login: String, maildir: Option<String>) {
        if let Some(t) = &self.tally {
            t.borrow_mut().auth(outcome);
        }
        match outcome {
            AuthOutcome::Success => {
                self.auth = Some(Identity { login, maildir });
                self.reply(Reply::new(235, "2.7.0", "Authentication successful"));
            }
            AuthOutcome::Failure => {
                self.reply_error(Reply::new(535, "5.7.8", "Error: authentication credentials invalid"))
            }
            AuthOutcome::Unavailable => {
                self.reply_error(Reply::new(454, "4.7.0", "Error: temporary authentication failure"))
            }
        }
    }
}
