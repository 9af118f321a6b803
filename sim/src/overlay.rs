//! What test mutations changed since generation, layered over the generated tenant.
//!
//! Only changed users are kept (a million generated users stay virtual). The overlay is shared as an
//! `Arc` snapshot and changed copy-on-write, so an export job sees one state from start to end.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use crate::data::{Role, Tenant};
use crate::nasty::RawUser;

/// One user's changes; `None` keeps the generated value.
#[derive(Clone, Debug, Default)]
pub struct Changed {
    /// Top-level profile fields: new JSON text, or `None` when removed.
    pub fields: BTreeMap<String, Option<String>>,
    /// Items of GET /users/{id}/authentication-methods.
    pub methods: Option<Vec<Value>>,
    /// Role indexes.
    pub roles: Option<Vec<u32>>,
}

/// A user added after generation: sim index `tenant.len() + k` for the k-th one.
#[derive(Clone, Debug)]
struct Added {
    user_id: Box<str>,
    /// Generator index its data comes from (past the generated users).
    gen: u32,
    conn: u8,
}

/// Members of one role that differ from the generated list.
#[derive(Clone, Debug, Default)]
struct RoleChanges {
    /// Generated members no longer in the role.
    hidden: HashSet<u32>,
    /// Members assigned since, `(assignment ms, index)` sorted by (time, user_id).
    extra: Vec<(i64, u32)>,
}

#[derive(Clone, Debug)]
pub struct Overlay {
    /// Generated users (the first added user's index).
    n: u32,
    /// Deleted users, generated or added.
    pub deleted: HashSet<u32>,
    users: HashMap<u32, Arc<Changed>>,
    added: Vec<Added>,
    /// Added users by user_id, which is also their user_id order.
    added_ids: BTreeMap<Box<str>, u32>,
    /// Next generator index an added user may take.
    next_gen: u64,
    roles: HashMap<u32, RoleChanges>,
    /// Mutations applied so far; seeds each mutation's random values.
    pub seq: u64,
}

impl Overlay {
    pub fn new(t: &Tenant) -> Overlay {
        Overlay {
            n: t.len() as u32,
            deleted: HashSet::new(),
            users: HashMap::new(),
            added: Vec::new(),
            added_ids: BTreeMap::new(),
            next_gen: t.len(),
            roles: HashMap::new(),
            seq: 0,
        }
    }

    /// Users ever known, generated or added (deleted ones included): indexes are `0..total()`.
    pub fn total(&self) -> u32 {
        self.n + self.added.len() as u32
    }

    pub fn index_of(&self, t: &Tenant, user_id: &str) -> Option<u32> {
        t.index_of(user_id).or_else(|| self.added_ids.get(user_id).copied())
    }

    /// Index of a user that exists and was not deleted.
    pub fn live_index(&self, t: &Tenant, user_id: &str) -> Option<u32> {
        self.index_of(t, user_id).filter(|i| !self.deleted.contains(i))
    }

    pub fn user_id<'a>(&'a self, t: &'a Tenant, idx: u32) -> &'a str {
        match idx.checked_sub(self.n) {
            None => &t.ids[idx as usize],
            Some(k) => &self.added[k as usize].user_id,
        }
    }

    pub fn conn(&self, t: &Tenant, idx: u32) -> u8 {
        match idx.checked_sub(self.n) {
            None => t.conn[idx as usize],
            Some(k) => self.added[k as usize].conn,
        }
    }

    fn gen(&self, idx: u32) -> u32 {
        match idx.checked_sub(self.n) {
            None => idx,
            Some(k) => self.added[k as usize].gen,
        }
    }

    fn changed(&self, idx: u32) -> Option<&Changed> {
        self.users.get(&idx).map(|c| &**c)
    }

    /// The profile as exact JSON text per top-level key, sorted by key.
    pub fn user_raw(&self, t: &Tenant, idx: u32) -> RawUser {
        let mut raw = t.user_raw(self.gen(idx));
        let Some(c) = self.changed(idx).filter(|c| !c.fields.is_empty()) else {
            return raw;
        };
        raw.retain(|(k, _)| !c.fields.contains_key(k));
        raw.extend(c.fields.iter().filter_map(|(k, v)| Some((k.clone(), v.clone()?))));
        raw.sort_by(|a, b| a.0.cmp(&b.0));
        raw
    }

    /// Items of GET /users/{id}/authentication-methods, in API order.
    pub fn methods(&self, t: &Tenant, idx: u32) -> Vec<Value> {
        match self.changed(idx).and_then(|c| c.methods.as_ref()) {
            Some(m) => m.clone(),
            None => t.auth_methods(self.gen(idx)),
        }
    }

    pub fn role_indexes(&self, t: &Tenant, idx: u32) -> Vec<u32> {
        match self.changed(idx).and_then(|c| c.roles.as_ref()) {
            Some(r) => r.clone(),
            None if idx < self.n => t.role_indexes(idx),
            None => Vec::new(),
        }
    }

    /// Roles of a user, sorted by name (the order the API and the truth use).
    pub fn user_roles<'a>(&self, t: &'a Tenant, idx: u32) -> Vec<&'a Role> {
        let mut out: Vec<&Role> = self.role_indexes(t, idx).into_iter().map(|r| &t.roles[r as usize]).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Live users in user_id order: the generated order merged with the added users.
    pub fn sorted_live<'a>(&'a self, t: &'a Tenant) -> impl Iterator<Item = u32> + 'a {
        let mut base = t.sorted.iter().copied().peekable();
        let mut added = self.added_ids.iter().peekable();
        std::iter::from_fn(move || {
            let base_first = match (base.peek(), added.peek()) {
                (Some(b), Some((a_id, _))) => *t.ids[*b as usize] < ***a_id,
                (b, _) => b.is_some(),
            };
            if base_first {
                base.next()
            } else {
                added.next().map(|(_, a)| *a)
            }
        })
        .filter(|idx| !self.deleted.contains(idx))
    }

    /// Live members of a role in (assignment time, user_id) order, strictly after `after` if given.
    pub fn members<'a>(
        &'a self,
        t: &'a Tenant,
        role: usize,
        after: Option<(i64, &str)>,
    ) -> impl Iterator<Item = (i64, u32)> + 'a {
        let base = &t.members[role][..];
        let ch = self.roles.get(&(role as u32));
        let extra = ch.map_or(&[][..], |c| &c.extra[..]);
        let key = move |m: &(i64, u32)| (m.0, self.user_id(t, m.1));
        let start = |list: &[(i64, u32)]| after.map_or(0, |a| list.partition_point(|m| key(m) <= a));
        let (mut i, mut j) = (start(base), start(extra));
        let hidden = move |idx: &u32| ch.is_some_and(|c| c.hidden.contains(idx));
        std::iter::from_fn(move || loop {
            let m = match (base.get(i), extra.get(j)) {
                (Some(b), Some(e)) if key(b) <= key(e) => {
                    i += 1;
                    if hidden(&b.1) {
                        continue;
                    }
                    *b
                }
                (_, Some(e)) => {
                    j += 1;
                    *e
                }
                (Some(b), None) => {
                    i += 1;
                    if hidden(&b.1) {
                        continue;
                    }
                    *b
                }
                (None, None) => return None,
            };
            if !self.deleted.contains(&m.1) {
                return Some(m);
            }
        })
    }

    /// How many live members a role has, without walking the generated list.
    pub fn member_total(&self, t: &Tenant, role: usize) -> usize {
        let base = t.members[role].len();
        let ch = self.roles.get(&(role as u32));
        let hidden = ch.map_or(0, |c| c.hidden.len());
        let gone = self
            .deleted
            .iter()
            .filter(|i| **i < self.n && ch.is_none_or(|c| !c.hidden.contains(*i)) && t.has_role(**i, role as u32))
            .count();
        let extra = ch.map_or(0, |c| c.extra.iter().filter(|(_, i)| !self.deleted.contains(i)).count());
        base - hidden - gone + extra
    }

    // ---- changes (used by `mutate`) ----

    fn change(&mut self, idx: u32) -> &mut Changed {
        Arc::make_mut(self.users.entry(idx).or_default())
    }

    /// Sets (`Some` JSON text) or removes (`None`) a top-level profile field.
    pub fn set_field(&mut self, idx: u32, key: &str, text: Option<String>) {
        self.change(idx).fields.insert(key.to_string(), text);
    }

    pub fn set_methods(&mut self, idx: u32, methods: Vec<Value>) {
        self.change(idx).methods = Some(methods);
    }

    /// Gives the user the role (`true`) or takes it away, keeping the member lists in step.
    pub fn set_role(&mut self, t: &Tenant, idx: u32, role: u32, on: bool, now_ms: i64) {
        let mut roles = self.role_indexes(t, idx);
        roles.retain(|r| *r != role);
        if on {
            roles.push(role);
            roles.sort_unstable();
        }
        self.change(idx).roles = Some(roles);
        let uid = self.user_id(t, idx).to_string();
        let mut ch = self.roles.remove(&role).unwrap_or_default();
        if on {
            let at = ch.extra.partition_point(|m| (m.0, self.user_id(t, m.1)) <= (now_ms, uid.as_str()));
            ch.extra.insert(at, (now_ms, idx));
        } else if let Some(pos) = ch.extra.iter().position(|m| m.1 == idx) {
            ch.extra.remove(pos);
        } else {
            ch.hidden.insert(idx);
        }
        self.roles.insert(role, ch);
    }

    /// Adds the next generated user of connection `conn` (database users by default): its data is the
    /// generator's for that index, then `fields`/`methods` replace what a new user does not have yet.
    pub fn add_user(&mut self, t: &Tenant, conn: u8) -> u32 {
        let (user_id, gen) = loop {
            let gen = self.next_gen;
            self.next_gen += 1;
            let (id, c) = t.generated(gen);
            if c == conn {
                break (id, gen as u32);
            }
        };
        let idx = self.total();
        self.added.push(Added { user_id: user_id.clone().into_boxed_str(), gen, conn });
        self.added_ids.insert(user_id.into_boxed_str(), idx);
        self.change(idx).roles = Some(Vec::new());
        idx
    }
}
