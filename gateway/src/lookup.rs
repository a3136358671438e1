//! The gateway's one query: a patient's newest active case, and a short memory of its answers.

use std::time::{Duration, Instant};

use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use scanhook_shared::entities::{CASE_STATUS_ACTIVE, cases};

use crate::patient::PatientId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveCase {
    pub id: i64,
    pub case_number: String,
}

/// The newest case of `patient` whose status is active, if any.
pub async fn find_active_case(
    db: &DatabaseConnection,
    patient: &PatientId,
) -> Result<Option<ActiveCase>, DbErr> {
    let row = cases::Entity::find()
        .select_only()
        .column(cases::Column::Id)
        .column(cases::Column::CaseNumber)
        .filter(cases::Column::PatientId.eq(patient.as_str()))
        .filter(cases::Column::Status.eq(CASE_STATUS_ACTIVE))
        .order_by_desc(cases::Column::CreatedAt)
        .order_by_desc(cases::Column::Id)
        .into_tuple::<(i64, String)>()
        .one(db)
        .await?;
    Ok(row.map(|(id, case_number)| ActiveCase { id, case_number }))
}

/// A bounded, short-lived memory of active-case lookups, so that a patient's burst of
/// notifications costs one query. Only found cases are kept: a case created a moment ago is
/// seen at once. A case closed while remembered may still be answered 202 for up to the TTL;
/// the worker re-checks the case in its transaction and dead-letters such an event with its
/// reason, so nothing wrong is applied.
pub struct CaseCache {
    entries: Option<quick_cache::sync::Cache<String, (ActiveCase, Instant)>>,
    ttl: Duration,
}

impl CaseCache {
    /// Up to `capacity` patients for `ttl` each; a zero of either turns the cache off.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        let entries =
            (capacity > 0 && !ttl.is_zero()).then(|| quick_cache::sync::Cache::new(capacity));
        Self { entries, ttl }
    }

    pub fn get(&self, patient: &PatientId) -> Option<ActiveCase> {
        let (case, stored) = self.entries.as_ref()?.get(patient.as_str())?;
        (stored.elapsed() < self.ttl).then_some(case)
    }

    pub fn insert(&self, patient: &PatientId, case: &ActiveCase) {
        if let Some(entries) = &self.entries {
            entries.insert(patient.as_str().to_owned(), (case.clone(), Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patient(id: &str) -> PatientId {
        PatientId::parse(id).expect("valid id")
    }

    #[test]
    fn a_remembered_case_expires_after_its_ttl() {
        let cache = CaseCache::new(10, Duration::from_millis(50));
        let case = ActiveCase { id: 7, case_number: "CASE-7".into() };
        assert_eq!(cache.get(&patient("p1")), None);
        cache.insert(&patient("p1"), &case);
        assert_eq!(cache.get(&patient("p1")), Some(case));
        assert_eq!(cache.get(&patient("p2")), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get(&patient("p1")), None);
    }

    #[test]
    fn a_zero_ttl_or_capacity_remembers_nothing() {
        let case = ActiveCase { id: 7, case_number: "CASE-7".into() };
        for cache in [CaseCache::new(0, Duration::from_secs(1)), CaseCache::new(10, Duration::ZERO)]
        {
            cache.insert(&patient("p1"), &case);
            assert_eq!(cache.get(&patient("p1")), None);
        }
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let cache = CaseCache::new(100, Duration::from_secs(60));
        for i in 0..10_000 {
            let case = ActiveCase { id: i, case_number: format!("CASE-{i}") };
            cache.insert(&patient(&format!("p{i}")), &case);
        }
        let kept = (0..10_000).filter(|i| cache.get(&patient(&format!("p{i}"))).is_some()).count();
        assert!(kept <= 200, "{kept} kept");
    }
}
