use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "cases")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub case_number: String,
    pub patient_id: String,
    pub status: String,
    pub latest_scan_id: Option<i64>,
    pub scan_updated_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::scans::Entity")]
    Scans,
    #[sea_orm(has_many = "super::activity_logs::Entity")]
    ActivityLogs,
}

impl Related<super::scans::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Scans.def()
    }
}

impl Related<super::activity_logs::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ActivityLogs.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
