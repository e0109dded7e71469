//! The operator's script in the session ([`crate::policy::script`]): called after our own
//! checks of a step accepted it, before its reply (and, for RCPT and the content, before the
//! policy services and milters). It runs on the shard, in the shard's Lua state, within its
//! budget; the session does not wait for anything else.

use super::Session;
use crate::policy::script::{Context, Hook, Outcome, Verdict, failure_reply};
use crate::spool::Envelope;

impl Session {
    /// The outcome of `hook` for the transaction `env` (the one being opened at MAIL, else
    /// the current one), the `recipient` asked about and the `message` at the end of the
    /// content; `None` when no script defines the hook.
    pub(super) fn script(
        &self,
        hook: Hook,
        env: Option<&Envelope>,
        recipient: Option<&str>,
        message: Option<&[u8]>,
    ) -> Option<Outcome> {
        let Some(host) = self.scripts.clone() else {
            // Configured but without a state on this shard: fail safe.
            return self
                .cfg
                .policy
                .scripts
                .as_ref()
                .filter(|s| s.defines(hook))
                .map(|_| Outcome { verdict: Some(Verdict::Refuse(failure_reply())), ..Outcome::default() });
        };
        let mut host = host.borrow_mut();
        if !host.defines(hook) {
            return None;
        }
        let env = env.or(self.tx.envelope.as_ref());
        let cx = Context {
            session: self.id,
            client_ip: self.peer.ip().to_string(),
            client_port: self.peer.port(),
            server_ip: self.local.map(|a| a.ip().to_string()).unwrap_or_default(),
            server_port: self.local.map_or(0, |a| a.port()),
            helo: self.helo.as_deref(),
            esmtp: self.esmtp,
            tls: self.tls.as_ref().map(|t| t.version.as_str()),
            auth: self.auth.as_ref().map(|a| a.login.as_str()),
            sender: env.map(|e| e.from.as_str()),
            recipient,
            recipients: env.map(|e| e.rcpts.iter().map(|r| r.address.as_str()).collect()).unwrap_or_default(),
            message,
            size: message.map_or(0, |m| m.len() as u64),
        };
        Some(host.run(hook, &cx))
    }

    /// Keeps what a script asked for the transaction besides its verdict.
    pub(super) fn keep_script_effects(&mut self, o: Outcome) {
        self.tx.prepend.extend(o.headers);
        if o.route.is_some() {
            self.tx.route = o.route;
        }
        if let Some(Verdict::Quarantine(why)) = o.verdict {
            self.tx.quarantine = Some(why);
        }
    }
}
