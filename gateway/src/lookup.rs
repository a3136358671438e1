//! The gateway's one query: a patient's newest active case.

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
