use super::*;

#[test]
fn physical_ids_become_logical_and_unknown_stays_unknown() {
    // 6 physical experts: logical 0 replicated on 0 and 4, logical 2 on 2 and 5.
    let map = ExpertMap::new(&[0, 1, 2, 3, 0, 2], 4).unwrap();
    let mut ids = [4, 5, UNKNOWN, 1, 0, 3];
    map.to_logical(&mut ids);
    assert_eq!(ids, [0, 2, UNKNOWN, 1, 0, 3]);
    assert_eq!((map.num_physical(), map.num_logical()), (6, 4));
}

#[test]
fn tables_that_name_no_logical_expert_or_no_expert_are_refused() {
    assert!(ExpertMap::new(&[], 1).is_err());
    assert!(ExpertMap::new(&[0, 1, 4], 3).is_err()); // 4 is not below 3
    assert!(ExpertMap::new(&[0, 1], 3).is_err()); // more logical than physical
    assert!(ExpertMap::new(&[0, 1], 0).is_err());
    let too_many = vec![0u32; MAX_EXPORT_EXPERTS as usize + 1];
    assert!(ExpertMap::new(&too_many, 1).is_err());
}
